"""The model zoo the estimate and the batch-size finder are measured on (no download).

Six Keras models of the kinds people train in notebooks, each sized so that a training step
needs a few hundred MiB to a few GiB: ``ZOO[name](policy)`` returns ``(model, make_batch)``,
where ``make_batch(n)`` gives ``(x, y)`` with ``n`` samples.
"""

from __future__ import annotations

import numpy as np


def _compile(keras, model):
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _classes(n, classes=10):
    return np.random.randint(0, classes, n)


def mlp(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((1024,)), L.Dense(4096, activation="relu"),
                              L.Dense(4096, activation="relu"), L.Dense(2048, activation="relu"),
                              L.Dense(10, dtype="float32")], name="mlp")
    return _compile(keras, model), lambda n: (np.random.rand(n, 1024).astype("float32"),
                                              _classes(n))


def cnn(keras):
    L = keras.layers
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        L.Conv2D(64, 3, padding="same", activation="relu"),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(128, 3, padding="same", activation="relu"),
        L.Conv2D(128, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(256, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(10, dtype="float32")], name="cnn")
    return _compile(keras, model), lambda n: (np.random.rand(n, 64, 64, 3).astype("float32"),
                                              _classes(n))


def resnet(keras):
    L = keras.layers
    x = inputs = keras.Input((32, 32, 3))
    x = L.Conv2D(64, 3, padding="same")(x)
    for filters in (64, 64, 128, 128):
        shortcut = x if x.shape[-1] == filters else L.Conv2D(filters, 1)(x)
        y = L.Conv2D(filters, 3, padding="same")(x)
        y = L.Activation("relu")(L.BatchNormalization()(y))
        y = L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(y))
        x = L.Activation("relu")(L.Add()([shortcut, y]))
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, dtype="float32")(x), name="resnet")
    return _compile(keras, model), lambda n: (np.random.rand(n, 32, 32, 3).astype("float32"),
                                              _classes(n))


def lstm(keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((100, 64)), L.LSTM(256, return_sequences=True),
                              L.LSTM(256), L.Dense(10, dtype="float32")], name="lstm")
    return _compile(keras, model), lambda n: (np.random.rand(n, 100, 64).astype("float32"),
                                              _classes(n))


def transformer(keras):
    L = keras.layers
    inputs = keras.Input((128,), dtype="int32")
    x = L.Embedding(8000, 256)(inputs)
    for _ in range(2):
        attended = L.MultiHeadAttention(num_heads=4, key_dim=64)(x, x)
        x = L.LayerNormalization()(L.Add()([x, attended]))
        hidden = L.Dense(256)(L.Dense(1024, activation="gelu")(x))
        x = L.LayerNormalization()(L.Add()([x, hidden]))
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, L.Dense(2, dtype="float32")(x), name="transformer")
    return _compile(keras, model), lambda n: (np.random.randint(0, 8000, (n, 128)).astype("int32"),
                                              _classes(n, 2))


def embedding(keras):
    L = keras.layers
    inputs = keras.Input((50,), dtype="int32")
    x = L.GlobalAveragePooling1D()(L.Embedding(400_000, 128)(inputs))
    x = L.Dense(64, activation="relu")(x)
    model = keras.Model(inputs, L.Dense(2, dtype="float32")(x), name="embedding")
    return _compile(keras, model), lambda n: (
        np.random.randint(0, 400_000, (n, 50)).astype("int32"), _classes(n, 2))


ZOO = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "lstm": lstm, "transformer": transformer,
       "embedding": embedding}
BATCHES = {"mlp": (256, 2048), "cnn": (64, 256), "resnet": (128, 512), "lstm": (128, 512),
           "transformer": (32, 128), "embedding": (256, 4096)}


def vgg(keras):
    """Gelu, dropout, flatten (held out in the first GPU run, then used to fit)."""
    L = keras.layers
    model = keras.Sequential([
        keras.Input((48, 48, 3)),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.BatchNormalization(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(), L.Dropout(0.25),
        L.Conv2D(128, 3, padding="same", activation="relu"), L.MaxPooling2D(), L.Flatten(),
        L.Dense(512, activation="gelu"), L.Dropout(0.5), L.Dense(10, dtype="float32")],
        name="vgg")
    return _compile(keras, model), lambda n: (np.random.rand(n, 48, 48, 3).astype("float32"),
                                              _classes(n))


def gru(keras):
    """A GRU text classifier over an embedding (held out once, then used to fit)."""
    L = keras.layers
    model = keras.Sequential([keras.Input((80,), dtype="int32"), L.Embedding(20000, 128),
                              L.GRU(256, return_sequences=True), L.GRU(128),
                              L.Dense(5, dtype="float32")], name="gru")
    return _compile(keras, model), lambda n: (np.random.randint(0, 20000, (n, 80)).astype("int32"),
                                              _classes(n, 5))


def conv1d(keras):
    """Held out: never used to fit the estimate's constants."""
    L = keras.layers
    model = keras.Sequential([
        keras.Input((200,), dtype="int32"), L.Embedding(30000, 128),
        L.Conv1D(256, 5, activation="relu"), L.MaxPooling1D(2),
        L.Conv1D(256, 5, activation="relu"), L.GlobalMaxPooling1D(),
        L.Dense(128, activation="relu"), L.Dense(3, dtype="float32")], name="conv1d")
    return _compile(keras, model), lambda n: (
        np.random.randint(0, 30000, (n, 200)).astype("int32"), _classes(n, 3))


def autoencoder(keras):
    """Held out: a dense autoencoder trained with SGD and momentum on a mean squared error."""
    L = keras.layers
    model = keras.Sequential([
        keras.Input((3072,)), L.Dense(1024, activation="relu"), L.Dense(256, activation="relu"),
        L.Dense(1024, activation="relu"), L.Dense(3072, activation="sigmoid", dtype="float32")],
        name="autoencoder")
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    return model, lambda n: (lambda x: (x, x))(np.random.rand(n, 3072).astype("float32"))


ZOO.update(vgg=vgg, gru=gru, conv1d=conv1d, autoencoder=autoencoder)
BATCHES.update(vgg=(64, 256), gru=(128, 512), conv1d=(128, 512), autoencoder=(512, 4096))
HELD_OUT = ("conv1d", "autoencoder")


def two_inputs(keras):
    """Held out: a functional model with two inputs (token ids and numeric features),
    concatenated, with dropout, trained with RMSprop."""
    L = keras.layers
    tokens = keras.Input((64,), dtype="int32", name="tokens")
    numbers = keras.Input((256,), name="numbers")
    text = L.GlobalAveragePooling1D()(L.Embedding(50_000, 256)(tokens))
    tabular = L.Dense(1024, activation="relu")(numbers)
    x = L.Concatenate()([text, tabular])
    x = L.Dropout(0.2)(L.Dense(2048, activation="relu")(x))
    model = keras.Model([tokens, numbers], L.Dense(4, dtype="float32")(x), name="two_inputs")
    model.compile(optimizer="rmsprop",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, lambda n: ((np.random.randint(0, 50_000, (n, 64)).astype("int32"),
                              np.random.rand(n, 256).astype("float32")), _classes(n, 4))


ZOO.update(two_inputs=two_inputs)
BATCHES.update(two_inputs=(256, 4096))
HELD_OUT = HELD_OUT + ("two_inputs",)
