"""Running models in onnxruntime: sessions, input feeds, output comparison and metrics, and the
calibration statistics (input importances, covariances) taken from intermediate outputs."""
