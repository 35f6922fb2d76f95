"""Encoders: frames, clips of frames, waveforms and log-mel patches -> vectors.

One interface by input kind, whatever runs the model:

* ``frame`` (:class:`VideoEncoder`): one frame (image size, crop, channel order, mean/std) -> one
  vector; a segment's vector is the mean over its frames;
* ``clip`` (:class:`~avarnet.encoders.onnx.OnnxClipEncoder`): a segment's frames as one clip
  (frames per clip, stride, frame rate) -> one vector;
* ``waveform`` (:class:`AudioEncoder`): samples (rate, normalisation, receptive field, hop) ->
  vectors per output frame, mean-pooled per segment;
* ``logmel`` (:class:`~avarnet.encoders.onnx.OnnxLogMelEncoder`): the VGGish/YAMNet front end
  (:mod:`avarnet.encoders.logmel`) -> one vector per patch, pooled per segment as output frames;
* ``spectrogram`` (:class:`~avarnet.encoders.spectrogram.SpectrogramEncoder`): AST, Whisper's
  encoder or CLAP's audio side with the model's own feature extractor -> one vector per patch,
  pooled per segment as output frames.

Backends: transformers (:mod:`avarnet.encoders.hf`: MobileViT and Wav2Vec2 by default, any image
or waveform model by hub id or folder; :mod:`avarnet.encoders.spectrogram`: AST, Whisper, CLAP)
and ONNX Runtime (:mod:`avarnet.encoders.onnx`: ``onnx:PATH`` with a JSON manifest beside the
file). ``VideoEncoder.load`` / ``AudioEncoder.load`` take any
source; the feature spec records each encoder's settings (``entry``) and digest.
"""

from __future__ import annotations

from .hf import (
    AUDIO_MODEL_LOADERS,
    SOURCE_LOADERS,
    AudioEncoder,
    EncoderLoadError,
    PooledImageModel,
    VideoEncoder,
    absolute_source,
    backbone_digest,
    check_backbone,
    conv_geometry,
    init_mobilevit_random,
    resolve_device,
)
from .logmel import LogMelFrontEnd
from .manifest import MANIFEST_KINDS, EncoderManifest, ManifestError, read_manifest
from .onnx import (
    ONNX_PREFIX,
    OnnxClipEncoder,
    OnnxFrameEncoder,
    OnnxLogMelEncoder,
    OnnxWaveformEncoder,
    audio_geometry_config,
    copy_onnx_encoder,
    encoder_from_copy,
    file_digest,
    load_onnx_audio,
    load_onnx_video,
)
from .spectrogram import SpectrogramEncoder, load_spectrogram_model

__all__ = [
    "AUDIO_MODEL_LOADERS",
    "MANIFEST_KINDS",
    "ONNX_PREFIX",
    "SOURCE_LOADERS",
    "AudioEncoder",
    "EncoderLoadError",
    "EncoderManifest",
    "LogMelFrontEnd",
    "ManifestError",
    "OnnxClipEncoder",
    "OnnxFrameEncoder",
    "OnnxLogMelEncoder",
    "OnnxWaveformEncoder",
    "PooledImageModel",
    "SpectrogramEncoder",
    "VideoEncoder",
    "absolute_source",
    "audio_geometry_config",
    "backbone_digest",
    "check_backbone",
    "conv_geometry",
    "copy_onnx_encoder",
    "encoder_from_copy",
    "file_digest",
    "init_mobilevit_random",
    "load_onnx_audio",
    "load_onnx_video",
    "load_spectrogram_model",
    "read_manifest",
    "resolve_device",
]
