"""COCO caption files (captions_train2017.json): one row per image, with all of its captions.

COCO keeps images apart from the annotations (annotations/captions_train2017.json next to
train2017/), so an image's file_name is looked up beside the JSON file, in the folder named after
the split (`train2017` from `captions_train2017.json`) next to it or to its parent, and in
images/ there; the first folder that holds the first image is used for all of them.
"""

from __future__ import annotations

from pathlib import Path

from hftool.errors import HftoolError


def is_coco_captions(loaded) -> bool:
    """A COCO caption file: {"images": [...], "annotations": [{"image_id", "caption"}, ...]}."""
    if not isinstance(loaded, dict) or not isinstance(loaded.get("images"), list):
        return False
    annotations = loaded.get("annotations")
    return isinstance(annotations, list) and bool(annotations) and isinstance(annotations[0], dict) \
        and "caption" in annotations[0]


def _image_folder(path: Path, first: str) -> Path:
    split = path.stem.split("_", 1)[-1]  # captions_train2017 -> train2017
    candidates = [path.parent, path.parent / split, path.parent.parent / split, path.parent / "images",
                  path.parent.parent / "images", path.parent.parent]
    found = next((c for c in candidates if (c / first).is_file()), None)
    if found is None:
        raise HftoolError(f"{path}: image {first} is in none of {', '.join(str(c) for c in candidates[:4])}; "
                          f"put the images in {path.parent.parent / split} or write a JSONL file of "
                          "{\"image\": path, \"captions\": [...]} rows")
    return found


def read_coco_captions(loaded: dict, path: Path):
    """The COCO caption file at `path` (already parsed) -> Dataset(image: absolute path, captions: list)."""
    import datasets

    captions: dict[int, list[str]] = {}
    for number, annotation in enumerate(loaded["annotations"], 1):
        if "image_id" not in annotation or not isinstance(annotation.get("caption"), str):
            raise HftoolError(f"{path}: annotation {number} needs an image_id and a caption string; fix or remove it")
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    images = [image for image in loaded["images"] if image.get("id") in captions]
    if not images:
        raise HftoolError(f"{path}: no annotation refers to an image id of its \"images\" list; check the file")
    folder = _image_folder(path, images[0]["file_name"])
    return datasets.Dataset.from_dict({"image": [str(folder / image["file_name"]) for image in images],
                                       "captions": [captions[image["id"]] for image in images]})
