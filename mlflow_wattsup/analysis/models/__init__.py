"""Network definitions we ship (torch, behind the ``ml`` extra): used where a pipeline's own
model cannot be imported, and by the offline segmentation project."""
