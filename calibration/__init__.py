"""Int8 post-training calibration: model import, BN folding, CLE, profiling, encodings, QDQ export."""
