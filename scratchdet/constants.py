"""Package-wide conventions shared by data, models and the CLI.

Images: 8-bit RGB, scaled to [0, 1], then normalised with a model's ``mean`` and
``std`` (``model.config``; the defaults below are ImageNet's, the usual choice).
Boxes fed to the model and to match_priors: (x1, y1, x2, y2) normalised to [0, 1].
Labels: 1..C-1 are object classes, 0 is background; padding in a [B, G] batch is 0.
"""
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD_LABEL = 0
