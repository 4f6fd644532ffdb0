"""dontstop: leak-free K-fold fine-tuning for Kaggle NLP."""
__version__ = "0.1.0"
