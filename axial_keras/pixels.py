"""Pixel conventions shared by the models, the input pipelines and export.

Images are RGB in [0, 255]. The panoptic models normalize inside as deeplab2 does,
`x / MID_GREY - 1`, so padding an image with `MID_GREY` pads it with zeros after
normalization.
"""

MID_GREY = 127.5
