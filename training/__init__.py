"""spectral_transcoder's PyTorch side: networks, checkpoint converters, ONNX export.

This package is the only code of the project that imports torch. It defines every
network once (:mod:`training.nets`), converts the official checkpoints
(:func:`training.convert.convert`, :func:`training.convert.build`) and writes
self-describing ONNX files (:func:`training.export.export_onnx`) that
:mod:`spectral_transcoder` loads with ONNX Runtime.

Command line: ``python -m training convert KIND SOURCE -o MODEL.onnx`` (see ``--help``).
"""
