"""Real data: download public files (verified, resumable) and prepare COCO, Flickr30k and VQAv2
into the data-directory layout of docs/architecture.md."""

from maccap.datasets.catalog import REMOTE_FILES, RemoteFile
from maccap.datasets.download import DownloadResult, download, fetch
from maccap.datasets.prepare import (LeakReport, PrepareReport, check_leaks, prepare_coco, prepare_flickr30k,
                                     prepare_vqav2)

__all__ = ["REMOTE_FILES", "RemoteFile", "DownloadResult", "download", "fetch", "LeakReport", "PrepareReport",
           "check_leaks", "prepare_coco", "prepare_flickr30k", "prepare_vqav2"]
