"""The quickstart world: generated scenes with captions and VQA questions, written like real datasets."""

from maccap.world.captions import scene_captions
from maccap.world.config import COLOUR_NAMES, COLOURS, HPOS, SHAPES, SIZES, VPOS, WorldConfig
from maccap.world.generate import ensure_world, generate_world, image_name, item_rng
from maccap.world.parse import caption_is_true, parse_caption, scene_from_caption
from maccap.world.questions import scene_questions
from maccap.world.scene import make_object, position_name, render_scene, sample_scene

__all__ = ["COLOURS", "COLOUR_NAMES", "HPOS", "SHAPES", "SIZES", "VPOS", "WorldConfig", "caption_is_true",
           "ensure_world", "generate_world", "image_name", "item_rng", "make_object", "parse_caption",
           "position_name", "render_scene", "sample_scene", "scene_captions", "scene_from_caption",
           "scene_questions"]
