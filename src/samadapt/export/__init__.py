"""Export: SAM's prompt encoder and mask decoder (with ProMISe's IPS shift) to ONNX."""
