"""The digits feature network: "digits FID" and class accuracy without any download.

A small MLP classifier of scikit-learn's 8x8 digits, trained here on 80% of the real images (the
other 20% are held out: real digits it never saw). Its last hidden layer (64-d) plays the role of
Inception's pool features and its logits that of Inception's classes, so the evaluation code path
is the one Inception FID takes; only the network differs.

    python -m evaluation.digits_network            # retrains and rewrites the shipped weights

The weights ship as `evaluation/weights/digits_mlp.safetensors` (about 100 KB).
"""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path
from flax import nnx

import paths
from evaluation.feature_network import FeatureNetwork, Params
from input_pipeline import digits

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "digits_mlp.safetensors"
HIDDEN, FEATURES = 256, 64


class DigitsMLP(nnx.Module):
    """[B, 64] pixels in [-1, 1] -> (features [B, 64], logits [B, 10])."""

    def __init__(self, *, rngs: nnx.Rngs):
        pixels = digits.IMAGE_SIZE**2
        self.hidden = nnx.Linear(pixels, HIDDEN, rngs=rngs)
        self.features = nnx.Linear(HIDDEN, FEATURES, rngs=rngs)
        self.classes = nnx.Linear(FEATURES, digits.NUM_CLASSES, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = nnx.gelu(self.features(nnx.gelu(self.hidden(pixels))))
        return features, self.classes(features)


def to_pixels(images: jax.Array) -> jax.Array:
    """[B, S, S, C] in [0, 1] (S a multiple of 8) -> [B, 64] grey 8x8 pixels in [-1, 1]."""
    batch, size, _, _ = images.shape
    if size % digits.IMAGE_SIZE:
        raise ValueError(
            f"The digits network reads {digits.IMAGE_SIZE}x{digits.IMAGE_SIZE} images (or "
            f"multiples, averaged down); got {size}x{size}."
        )
    scale = size // digits.IMAGE_SIZE
    grey = jnp.mean(images, axis=-1)
    pooled = grey.reshape(batch, digits.IMAGE_SIZE, scale, digits.IMAGE_SIZE, scale)
    return pooled.mean(axis=(2, 4)).reshape(batch, -1) * 2.0 - 1.0


def _apply(params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(_graphdef(), nnx.State(params))
    return model(to_pixels(images.astype(jnp.float32)))


def _graphdef() -> nnx.GraphDef:
    return nnx.graphdef(nnx.eval_shape(lambda: DigitsMLP(rngs=nnx.Rngs(0))))


def split_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (held-out images, labels)): the digits' "fit" and "held_out"
    splits, images [N, 8, 8, 1] in [0, 1]."""
    images, labels = digits.load_digits_images()
    images = quantize(images)
    fit, held_out = digits.split_indices("fit"), digits.split_indices("held_out")
    return (images[fit], labels[fit]), (images[held_out], labels[held_out])


def quantize(images: np.ndarray) -> np.ndarray:
    """[-1, 1] images -> the 8-bit values in [0, 1] a saved PNG would hold."""
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.float32) / 255.0


def train(seed: int = 0, steps: int = 3000, learning_rate: float = 1e-3) -> Params:
    """Full-batch Adam on the training 80% with small pixel noise (samples are never exact)."""
    import optax  # noqa: PLC0415

    (train_x, train_y), _ = split_digits()
    pixels = to_pixels(jnp.asarray(train_x))
    labels = jnp.asarray(train_y)
    model = DigitsMLP(rngs=nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optimizer = optax.adamw(learning_rate, weight_decay=1e-4)

    def loss_fn(params, key):
        noisy = pixels + 0.1 * jax.random.normal(key, pixels.shape)
        _, logits = nnx.merge(_graphdef(), nnx.State(params))(noisy)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(carry, key):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    keys = jax.random.split(jax.random.key(seed), steps)
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
    return jax.device_get(params)


def save(params: Params, path: str | os.PathLike) -> None:
    """Writes the parameters as safetensors ("hidden.kernel", ...)."""
    flat = {
        f"{layer}.{name}": np.asarray(value)
        for layer, leaves in params.items()
        for name, value in leaves.items()
    }
    if not paths.is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    paths.save_safetensors(flat, path)


def load(path: str | os.PathLike = DEFAULT_WEIGHTS) -> FeatureNetwork:
    """The digits FeatureNetwork from its safetensors file (features 64-d, 10 classes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Digits feature-network weights {str(path)!r} not found; make them with "
            f"`python -m evaluation.digits_network --out={path}`."
        )
    expected = jax.tree.map(
        lambda leaf: leaf.shape,
        nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: DigitsMLP(rngs=nnx.Rngs(0))))),
    )
    tensors = paths.read_safetensors(path)
    params: Params = {}
    for layer, leaves in expected.items():
        for name, shape in leaves.items():
            key = f"{layer}.{name}"
            if key not in tensors or tensors[key].shape != tuple(shape):
                got = tensors[key].shape if key in tensors else "missing"
                raise ValueError(
                    f"{str(path)!r} is not the digits MLP: tensor {key!r} should have shape "
                    f"{tuple(shape)}, got {got}."
                )
            params.setdefault(layer, {})[name] = jnp.asarray(tensors[key])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return FeatureNetwork(
        name="digits",
        feature_dim=FEATURES,
        num_classes=digits.NUM_CLASSES,
        params=params,
        apply=_apply,
        weights_id=f"{path.name}:{digest}",
    )


def accuracy(network: FeatureNetwork, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of [0, 1] images whose predicted class is the given label."""
    _, logits = jax.jit(network.apply)(network.params, jnp.asarray(images))
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


def main() -> None:
    """Retrains the network, writes its weights and prints its held-out accuracy."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    save(train(args.seed, args.steps), args.out)
    network = load(args.out)
    (train_x, train_y), (test_x, test_y) = split_digits()
    print(f"wrote {args.out} ({network.weights_id})")
    print(f"accuracy: train {accuracy(network, train_x, train_y):.4f}, ", end="")
    print(f"held-out {accuracy(network, test_x, test_y):.4f}")


if __name__ == "__main__":
    main()
