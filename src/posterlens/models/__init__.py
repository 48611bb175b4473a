"""The models layer: fitted numpy heads (``fitted``), estimators with the scikit-learn contract
(``estimators``, ``pixels``, ``text``), the similar-movies index (``similar``) and the model
directory (``directory``: safetensors + JSON, schema-checked). It imports the data and features
layers only."""
