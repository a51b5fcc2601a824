"""The Keras model (tf_keras): the MobileNetV2 backbone and its weights, the head, loading a run's model
(QAT models included), one traced predict function per model, BatchNorm statistics, the training loops
that train and compare share, and the TFLite copy of the frozen base. TensorFlow is imported lazily,
through edgetl.model.tfenv only, so importing these modules stays cheap.
"""
