"""Deployment: prediction on your images, ONNX export and the Gradio Space."""
