"""Everything specific to the embedded moving-shapes data: the dataset, its captions and classes, the word tokenizer
for its captions, the prompt-following reader and the evaluation built on it."""

from vidgen.data.shapes.dataset import (
    CLASS_FACTORS,
    COLOR_NAMES,
    COLORS,
    DIRECTION_NAMES,
    DIRECTIONS,
    EXTRA_COLOR_FIELDS,
    GEOMETRY_FIELDS,
    NUM_CLASSES,
    SHAPES,
    SPLITS,
    Clip,
    ShapesDataset,
    caption,
    check_extra_colors,
    class_attributes,
    class_id,
    parse_combination,
    render,
)
from vidgen.data.shapes.tokenizer import shapes_tokenizer

__all__ = ["CLASS_FACTORS", "COLOR_NAMES", "COLORS", "DIRECTION_NAMES", "DIRECTIONS", "EXTRA_COLOR_FIELDS",
           "GEOMETRY_FIELDS", "NUM_CLASSES", "SHAPES", "SPLITS", "Clip", "ShapesDataset", "caption",
           "check_extra_colors", "class_attributes", "class_id", "parse_combination", "render", "shapes_tokenizer"]
