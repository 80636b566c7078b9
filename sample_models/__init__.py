"""Bundled sample models: tiny trained checkpoints, their data, and the script that made them (train.py)."""


def _ckpts(name: str, n: int = 5) -> list[str]:
    return [f"{name}/ckpt_{i:03d}.pt" for i in range(n)]


SAMPLES: dict[str, dict] = {
    "mlp": {
        "about": "MLP 64-32-10 on the 8x8 digits (1797 images), 2410 params, final train accuracy 100%",
        "model": "landscape.sample_models.models:mlp",
        "checkpoint": "mlp/final.pt",
        "checkpoints": _ckpts("mlp"),
        "data": "mlp/data.npz",
        "loss": "cross-entropy",
    },
    "cnn": {
        "about": "2-layer CNN with BatchNorm on the 8x8 digits (1797 images), 1946 params, final train accuracy 99.2%",
        "model": "landscape.sample_models.models:cnn",
        "checkpoint": "cnn/final.pt",
        "checkpoints": _ckpts("cnn"),
        "data": "cnn/data.npz",
        "loss": "cross-entropy",
    },
    "transformer": {
        "about": "1-block 2-head transformer, 'most frequent token' task (1000 sequences, length 8, vocab 8), "
        "2120 params, final train accuracy 100%",
        "model": "landscape.sample_models.models:transformer",
        "checkpoint": "transformer/final.pt",
        "checkpoints": _ckpts("transformer"),
        "data": "transformer/data.npz",
        "loss": "cross-entropy",
    },
    "linreg": {
        "about": "linear regression, N=200, d=10, y = Xw* + b + N(0, 0.1^2) noise, 11 params, final MSE 0.0095",
        "model": "landscape.sample_models.models:linreg",
        "checkpoint": "linreg/final.pt",
        "checkpoints": _ckpts("linreg"),
        "data": "linreg/data.npz",
        "loss": "mse",
    },
}
