"""Numbers reported by others (Karpathy test splits), for the "reported" column of paper tables.

Values are on the x100 scale as published. A missing value is simply absent (never invented):
MacCap's and SynTIC's own figures are not available to this project, so they have no entries.
Datasets: coco, flickr30k, coco->flickr30k (train COCO text, test Flickr30k), flickr30k->coco,
cc3m->coco. Metrics: BLEU-4, METEOR, CIDEr-D, SPICE (table column keys B@4, M, C, S).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_VIECAP = "ViECap authors' README (Karpathy test), via METHOD.md section 5"
SOURCE_MEACAP = "MeaCap authors' README (Karpathy test), via METHOD.md section 5"
SOURCE_DECAP_CC3M = "DeCap trained on CC3M text, zero-shot on COCO, via METHOD.md section 5"

DATASETS = ("coco", "flickr30k", "coco->flickr30k", "flickr30k->coco")
_METRICS = ("B@4", "M", "C", "S")


@dataclass(frozen=True)
class Reported:
    method: str  # display name as published
    dataset: str
    metric: str  # B@4, M, C or S
    value: float
    source: str


def _rows(method: str, source: str, per_dataset: dict[str, tuple[float | None, ...]]) -> list[Reported]:
    out = []
    for ds, values in per_dataset.items():
        for metric, v in zip(_METRICS, values):
            if v is not None:
                out.append(Reported(method, ds, metric, v, source))
    return out


def _cider(method: str, source: str, per_dataset: dict[str, float]) -> list[Reported]:
    return [Reported(method, ds, "C", v, source) for ds, v in per_dataset.items()]


REPORTED: tuple[Reported, ...] = tuple(
    _rows("ZeroCap", SOURCE_VIECAP, {"coco": (7.0, 15.4, 34.5, 9.2), "flickr30k": (5.4, 11.8, 16.8, 6.2)})
    + _rows("MAGIC", SOURCE_VIECAP, {"coco": (12.9, 17.4, 49.3, 11.3), "flickr30k": (6.4, 13.1, 20.4, 7.1),
                                     "coco->flickr30k": (6.2, 12.2, 17.5, 5.9),
                                     "flickr30k->coco": (5.2, 12.5, 18.3, 5.7)})
    + _rows("DeCap", SOURCE_VIECAP, {"coco": (24.7, 25.0, 91.2, 18.7), "flickr30k": (21.2, 21.8, 56.7, 15.2),
                                     "coco->flickr30k": (16.3, 17.9, 35.7, 11.1),
                                     "flickr30k->coco": (12.1, 18.0, 44.4, 10.9)})
    + _rows("CapDec", SOURCE_VIECAP, {"coco": (26.4, 25.1, 91.8, None), "flickr30k": (17.7, 20.0, 39.1, None),
                                      "coco->flickr30k": (17.3, 18.6, 35.7, None),
                                      "flickr30k->coco": (9.2, 16.3, 27.3, None)})
    + _rows("ViECap", SOURCE_VIECAP, {"coco": (27.2, 24.8, 92.9, 18.2), "flickr30k": (21.4, 20.1, 47.9, 13.6),
                                      "coco->flickr30k": (17.4, 18.0, 38.4, 11.2),
                                      "flickr30k->coco": (12.6, 19.3, 54.2, 12.5)})
    + _cider("CLIPRe", SOURCE_MEACAP, {"coco": 53.4, "flickr30k": 31.7, "coco->flickr30k": 30.1, "flickr30k->coco": 26.5})
    + _cider("MeaCap-InvLM", SOURCE_MEACAP, {"coco": 95.4, "flickr30k": 59.4, "coco->flickr30k": 43.9,
                                             "flickr30k->coco": 56.4})
    + _cider("DeCap", SOURCE_DECAP_CC3M, {"cc3m->coco": 42.1})
)

# Our method names -> the published name they correspond to. MacCap/SynTIC deliberately absent.
METHOD_NAMES = {"decap": "DeCap", "capdec": "CapDec"}


def reported_value(method: str, dataset: str, metric: str) -> Reported | None:
    """The published number for one of our methods (or a published name), or None."""
    name = METHOD_NAMES.get(method, method)
    for r in REPORTED:
        if r.method == name and r.dataset == dataset and r.metric == metric:
            return r
    return None


def reported_only_methods() -> list[str]:
    """Published methods that this project does not run (rows with only reported numbers)."""
    ours = set(METHOD_NAMES.values())
    seen: list[str] = []
    for r in REPORTED:
        if r.method not in ours and r.method not in seen:
            seen.append(r.method)
    return seen
