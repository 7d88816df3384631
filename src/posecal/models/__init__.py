"""The model side: adapters for TFLite/ONNX/PyTorch pose models, top-down crops, the feature store and the
extraction loop that fills it (model + images -> predictions, heatmap sigma-hat and penultimate features)."""
