"""dicomnode: a DICOM de-identification gateway."""

__version__ = "0.1.0"
