"""Files with public URLs that `maccap-bench data download` knows, with pinned checksums.

A checksum is pinned only where a public, independent record of it exists (the source is named
beside it). Where none was available when this table was written, `sha256` is None: the downloader
then computes the hash, records it beside the file and says that it was not pinned, rather than
pretending to have verified anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from maccap.registry import Registry


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives, what it must hash to, and where it unpacks."""

    name: str
    filename: str
    url: str | None  # None: no public URL; the user places `filename` into --root by hand
    sha256: str | None  # None: not pinned (see module docstring)
    size: int | None = None  # bytes, when known; checked before hashing
    extract_dir: str | None = None  # archives unpack under ROOT/extract_dir
    checksum_source: str = ""
    description: str = ""
    manual: str = ""  # how to obtain the file when the URL fails or does not exist

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


_TFDS = "TensorFlow Datasets url_checksums/coco_captions.txt"

REMOTE_FILES: Registry[RemoteFile] = Registry("downloadable file")


def _add(f: RemoteFile) -> None:
    REMOTE_FILES.add(f.name, f)


_add(RemoteFile(
    name="karpathy-splits",
    filename="caption_datasets.zip",
    url="https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    sha256="4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
    size=36745453,
    extract_dir="karpathy",
    checksum_source=_TFDS,
    description="Karpathy splits: dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json",
    manual="download caption_datasets.zip from the Karpathy 'deepimagesent' page",
))
_add(RemoteFile(
    name="coco2014-val-images",
    filename="val2014.zip",
    url="http://images.cocodataset.org/zips/val2014.zip",
    sha256="fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
    size=6645013297,
    extract_dir="coco2014",
    checksum_source=_TFDS,
    description="COCO 2014 val images (6.2 GiB); holds every Karpathy val/test image and the VQAv2 val images",
    manual="download val2014.zip from cocodataset.org (Dataset > Download > 2014 Val images)",
))
_add(RemoteFile(
    name="vqav2-val-questions",
    filename="v2_Questions_Val_mscoco.zip",
    url="https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Questions_Val_mscoco.zip",
    sha256=None,
    extract_dir="vqav2",
    description="VQAv2 val questions (v2_OpenEnded_mscoco_val2014_questions.json)",
    manual="download the VQAv2 'Validation questions' zip from visualqa.org/download.html",
))
_add(RemoteFile(
    name="vqav2-val-annotations",
    filename="v2_Annotations_Val_mscoco.zip",
    url="https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Annotations_Val_mscoco.zip",
    sha256=None,
    extract_dir="vqav2",
    description="VQAv2 val annotations (v2_mscoco_val2014_annotations.json)",
    manual="download the VQAv2 'Validation annotations' zip from visualqa.org/download.html",
))
_add(RemoteFile(
    name="flickr30k-images",
    filename="flickr30k-images.tar.gz",
    url=None,
    sha256=None,
    extract_dir="flickr30k",
    description="Flickr30k images (distributed only after accepting the dataset's terms)",
    manual=("request the Flickr30k images from the dataset's authors (Illinois DenotationGraph page), "
            "save the archive as flickr30k-images.tar.gz"),
))
