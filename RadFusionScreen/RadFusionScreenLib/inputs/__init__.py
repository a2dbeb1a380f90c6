"""Stage 1, inputs: images and masks from files, DICOM series, DICOM SEG / RTSTRUCT, synthetic phantoms."""
