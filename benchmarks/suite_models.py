"""The benchmark suite's models: ordinary sizes, random init, built in code (no downloads).

Each entry writes its checkpoint and data into a work folder (`prepare`) the way a user has them
(a state_dict or a save_pretrained folder, a data file), says how `landscape` is pointed at them
(`cli_args`), and loads them back the way a user's own script would (`load`), for the baselines.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def mlp() -> nn.Module:
    """A ReLU MLP 784-256-128-10: 235k parameters."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 with 10 classes, as is (its stem on 32x32 inputs): 11.2M parameters."""
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def vit() -> nn.Module:
    """A timm ViT (tiny width, 6 blocks) with patch 4 on 32x32 inputs: 2.7M parameters, 65 tokens."""
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4, depth=6
    )


def mobilenet() -> nn.Module:
    """torchvision's MobileNetV3-small with 10 classes (depthwise convolutions, squeeze-excite,
    hardswish, BatchNorm): 1.5M parameters. Held out: not in `make bench`'s default list."""
    import torchvision

    return torchvision.models.mobilenet_v3_small(num_classes=10)


def regnet() -> nn.Module:
    """torchvision's RegNetX-400MF with 10 classes (grouped convolutions, BatchNorm): 5.1M parameters. Held out."""
    import torchvision

    return torchvision.models.regnet_x_400mf(num_classes=10)


def efficientnet() -> nn.Module:
    """torchvision's EfficientNet-B0 with 10 classes (MBConv blocks: depthwise convolutions, squeeze-excite,
    SiLU, BatchNorm, stochastic depth off in eval): 4.0M parameters. Held out."""
    import torchvision

    return torchvision.models.efficientnet_b0(num_classes=10)


def convnext() -> nn.Module:
    """timm's ConvNeXt-atto with 10 classes (a patchify stem, 7x7 depthwise convolutions, LayerNorm, GELU,
    layer scale; no BatchNorm): 3.4M parameters. Held out."""
    import timm

    return timm.create_model("convnext_atto", pretrained=False, num_classes=10)


def tabular() -> nn.Module:
    """A tabular MLP 64-256-256-10 with LayerNorm, GELU and dropout (off in eval): 85k parameters. Held out."""
    return nn.Sequential(
        nn.Linear(64, 256), nn.LayerNorm(256), nn.GELU(), nn.Dropout(0.1),
        nn.Linear(256, 256), nn.LayerNorm(256), nn.GELU(), nn.Dropout(0.1),
        nn.Linear(256, 10),
    )  # fmt: skip


class TextLSTM(nn.Module):
    """Token embeddings, a 2-layer LSTM, a linear head on the last step."""

    def __init__(self, vocab: int = 2000, width: int = 64, hidden: int = 128, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.LSTM(width, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


def lstm() -> nn.Module:
    """A text classifier: embeddings 2000x64, a 2-layer LSTM of width 128, 5 classes: 360k parameters. Held out."""
    return TextLSTM()


def audio() -> nn.Module:
    """A raw-waveform classifier (1D convolutions with BatchNorm, strides 4-2-2, global pooling), 8 classes:
    32k parameters. Held out."""
    return nn.Sequential(
        nn.Conv1d(1, 32, 9, stride=4), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Conv1d(32, 64, 5, stride=2), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Conv1d(64, 64, 5, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 8),
    )  # fmt: skip


class TinyUNet(nn.Module):
    """Two levels of a U-Net (BatchNorm, max-pooling, a transposed convolution, a skip connection)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.out = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.down1(x)
        return self.out(torch.cat([a, self.up(self.down2(a))], 1))


def unet() -> nn.Module:
    """A per-pixel classifier (4 classes, targets [N, H, W]): 7.4k parameters. Held out."""
    return TinyUNet()


def gpt2_config():  # type: ignore[no-untyped-def]
    import transformers

    return transformers.GPT2Config(
        n_layer=4, n_head=4, n_embd=256, n_positions=64, vocab_size=4096, bos_token_id=0, eos_token_id=0
    )


Columns = Callable[[torch.Generator], dict[str, torch.Tensor]]  # an entry's data, drawn from a seeded generator


@dataclass(frozen=True)
class Entry:
    """One model of the suite: its factory, its data and its loss."""

    about: str
    factory: str  # "module:fn" (a sample) or the name of a function in this file
    data: Columns | None = None
    loss: str = "cross-entropy"  # or next-token
    sample: str | None = None  # a bundled sample: its own checkpoint and data
    hf: bool = False  # saved with save_pretrained, loaded as a folder (no --model)
    extra: list[str] = field(default_factory=list)


class TextEncoder(nn.Module):
    """Token and learned position embeddings, `nn.TransformerEncoder` (post-norm, ReLU), mean-pooled, a linear head."""

    def __init__(self, vocab: int = 3000, width: int = 128, length: int = 48, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(0.02 * torch.randn(length, width))
        layer = nn.TransformerEncoderLayer(width, 4, 256, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids) + self.pos[: ids.shape[1]]).mean(1))


def encoder() -> nn.Module:
    """A text classifier on PyTorch's own `nn.TransformerEncoder` (4 layers, width 128, 4 heads; its
    fused inference kernel in no-grad passes), 4 classes: 920k parameters. Held out."""
    return TextEncoder()


def densenet() -> nn.Module:
    """torchvision's DenseNet (growth 12, three blocks of 4 layers: concatenations, BatchNorm before each
    convolution), 10 classes: 106k parameters. Held out."""
    import torchvision

    return torchvision.models.DenseNet(growth_rate=12, block_config=(4, 4, 4), num_init_features=24, num_classes=10)


def shufflenet() -> nn.Module:
    """torchvision's ShuffleNetV2 x0.5 (channel split and shuffle, depthwise convolutions, BatchNorm),
    10 classes: 352k parameters. Held out."""
    import torchvision

    return torchvision.models.shufflenet_v2_x0_5(num_classes=10)


def mnasnet() -> nn.Module:
    """torchvision's MNASNet 0.5 (inverted residuals, depthwise 3x3 and 5x5 convolutions, BatchNorm),
    10 classes: 950k parameters. Held out."""
    import torchvision

    return torchvision.models.mnasnet0_5(num_classes=10)


def mixer() -> nn.Module:
    """timm's MLP-Mixer (patch 4 on 32x32, 4 blocks of width 128: token- and channel-mixing MLPs, LayerNorm,
    GELU), 10 classes: 570k parameters. Held out."""
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=32, patch_size=4, num_blocks=4, embed_dim=128)


class TextGRU(nn.Module):
    """Token embeddings, a bidirectional GRU, a linear head on the mean over steps."""

    def __init__(self, vocab: int = 2000, width: int = 64, hidden: int = 96, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out.mean(1))


def gru() -> nn.Module:
    """A text classifier: embeddings 2000x64, a bidirectional GRU of width 96, 3 classes: 222k parameters. Held out."""
    return TextGRU()


def bert():  # type: ignore[no-untyped-def]
    """Hugging Face's BertForSequenceClassification (4 layers, hidden 128, 4 heads, vocab 3000), 4 labels:
    940k parameters, saved with save_pretrained. Held out."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=3000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=64, num_labels=4,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def timm_efficientnet() -> nn.Module:
    """timm's EfficientNet-B0 with 10 classes: its BatchNorms are BatchNormAct2d (norm and activation in one
    module, which torch.fx traces through), depthwise convolutions, squeeze-excitation, SiLU: 4.0M
    parameters. Held out."""
    import timm

    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)


def squeezenet() -> nn.Module:
    """torchvision's SqueezeNet 1.1 with 10 classes (fire modules: 1x1 squeeze, 1x1 and 3x3 expand
    concatenated; ReLU, dropout, no BatchNorm; a convolutional classifier): 728k parameters. Held out."""
    import torchvision

    return torchvision.models.squeezenet1_1(num_classes=10)


def timm_resnet_gn() -> nn.Module:
    """timm's ResNet-18 with GroupNorm in place of BatchNorm (nothing to fold: its statistics are the
    batch's own), 10 classes: 11.2M parameters. Held out."""
    import timm
    from timm.layers import GroupNorm

    return timm.create_model("resnet18", pretrained=False, num_classes=10, norm_layer=GroupNorm)


def timm_mobilenetv3() -> nn.Module:
    """timm's MobileNetV3-Large (BatchNormAct2d, hard-swish, squeeze-excitation with hard-sigmoid,
    depthwise convolutions), 10 classes: 4.2M parameters. Held out."""
    import timm

    return timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=10)


def llama():  # type: ignore[no-untyped-def]
    """Hugging Face's LlamaForCausalLM (4 layers, d=256, 8 query and 2 key-value heads, SwiGLU of 688,
    RMSNorm, rotary positions, untied head, vocab 4096): 4.9M parameters. Held out."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=688, max_position_embeddings=64, use_cache=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def gpt2():  # type: ignore[no-untyped-def]
    import transformers

    return transformers.GPT2LMHeadModel(gpt2_config())


def _classified(x: Callable[[torch.Generator], torch.Tensor], classes: int, target: tuple[int, ...] = ()) -> Columns:
    """Inputs drawn by `x`, and random class targets (one per sample, or of shape `target` per sample)."""

    def make(g: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = x(g)
        return {"x": inputs, "y": torch.randint(0, classes, (len(inputs), *target), generator=g)}

    return make


def _images(n: int, shape: tuple[int, ...]) -> Columns:
    return _classified(lambda g: torch.randn(n, *shape, generator=g), 10)


def _bert_tokens(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(0, 3000, (256, 48), generator=g),
        "labels": torch.randint(0, 4, (256,), generator=g),
    }


def _tokens(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 4096, (64, 64), generator=g)}


ENTRIES: dict[str, Entry] = {
    "mlp": Entry("ReLU MLP 784-256-128-10, 235k params, 2048 samples", "mlp", _images(2048, (784,))),
    "resnet18": Entry("torchvision ResNet-18, 11.2M params, 512 images 3x32x32", "resnet18", _images(512, (3, 32, 32))),
    "vit": Entry("timm ViT tiny/6 blocks, patch 4, 2.7M params, 128 images 3x32x32", "vit", _images(128, (3, 32, 32))),
    "gpt2": Entry(
        "GPT-2-shaped decoder (4 layers, d=256, vocab 4096), 4.2M params, 64 sequences x 64 tokens",
        "gpt2",
        _tokens,
        loss="next-token",
        hf=True,
    ),
    "mobilenet": Entry(
        "torchvision MobileNetV3-small, 1.5M params, 1024 images 3x32x32", "mobilenet", _images(1024, (3, 32, 32))
    ),
    "regnet": Entry("torchvision RegNetX-400MF, 5.1M params, 512 images 3x32x32", "regnet", _images(512, (3, 32, 32))),
    "efficientnet": Entry(
        "torchvision EfficientNet-B0, 4.0M params, 256 images 3x32x32", "efficientnet", _images(256, (3, 32, 32))
    ),
    "convnext": Entry("timm ConvNeXt-atto, 3.4M params, 256 images 3x32x32", "convnext", _images(256, (3, 32, 32))),
    "tabular": Entry(
        "MLP 64-256-256-10 with LayerNorm and GELU, 85k params, 4096 rows", "tabular", _images(4096, (64,))
    ),
    "lstm": Entry(
        "text LSTM (embeddings, 2 layers of 128), 360k params, 512 sequences x 32 tokens",
        "lstm",
        _classified(lambda g: torch.randint(0, 2000, (512, 32), generator=g), 5),
    ),
    "audio": Entry(
        "1D-conv waveform classifier with BatchNorm, 32k params, 512 clips x 4000 samples",
        "audio",
        _classified(lambda g: torch.randn(512, 1, 4000, generator=g), 8),
    ),
    "unet": Entry(
        "two-level U-Net, per-pixel cross-entropy, 7.4k params, 128 images 3x32x32",
        "unet",
        _classified(lambda g: torch.randn(128, 3, 32, 32, generator=g), 4, (32, 32)),
    ),
    "encoder": Entry(
        "nn.TransformerEncoder text classifier (4 layers, d=128), 920k params, 256 sequences x 48 tokens",
        "encoder",
        _classified(lambda g: torch.randint(0, 3000, (256, 48), generator=g), 4),
    ),
    "densenet": Entry(
        "torchvision DenseNet (growth 12, 3 blocks of 4), 106k params, 512 images 3x32x32",
        "densenet",
        _images(512, (3, 32, 32)),
    ),
    "shufflenet": Entry(
        "torchvision ShuffleNetV2 x0.5, 352k params, 512 images 3x32x32", "shufflenet", _images(512, (3, 32, 32))
    ),
    "mnasnet": Entry("torchvision MNASNet 0.5, 950k params, 512 images 3x32x32", "mnasnet", _images(512, (3, 32, 32))),
    "mixer": Entry(
        "timm MLP-Mixer (patch 4, 4 blocks of 128), 570k params, 256 images 3x32x32", "mixer", _images(256, (3, 32, 32))
    ),
    "gru": Entry(
        "text bidirectional GRU (embeddings, width 96), 222k params, 512 sequences x 40 tokens",
        "gru",
        _classified(lambda g: torch.randint(0, 2000, (512, 40), generator=g), 3),
    ),
    "bert": Entry(
        "Hugging Face BERT classifier (4 layers, d=128), 940k params, 256 sequences x 48 tokens",
        "bert",
        _bert_tokens,
        hf=True,
    ),
    "timm-efficientnet": Entry(
        "timm EfficientNet-B0 (BatchNormAct2d), 4.0M params, 256 images 3x32x32",
        "timm_efficientnet",
        _images(256, (3, 32, 32)),
    ),
    "llama": Entry(
        "Hugging Face Llama decoder (4 layers, d=256, GQA 8/2 heads, vocab 4096), 4.9M params, 64 sequences x 64 tokens",
        "llama",
        _tokens,
        loss="next-token",
        hf=True,
    ),
    "squeezenet": Entry(
        "torchvision SqueezeNet 1.1 (no BatchNorm), 728k params, 1024 images 3x32x32",
        "squeezenet",
        _images(1024, (3, 32, 32)),
    ),
    "timm-resnet-gn": Entry(
        "timm ResNet-18 with GroupNorm, 11.2M params, 512 images 3x32x32", "timm_resnet_gn", _images(512, (3, 32, 32))
    ),
    "timm-mobilenetv3": Entry(
        "timm MobileNetV3-Large (BatchNormAct2d, hard-swish), 4.2M params, 256 images 3x32x32",
        "timm_mobilenetv3",
        _images(256, (3, 32, 32)),
    ),
    "sample-mlp": Entry("the bundled sample mlp", "landscape.sample_models.models:mlp", sample="mlp"),
    "sample-cnn": Entry("the bundled sample cnn (BatchNorm)", "landscape.sample_models.models:cnn", sample="cnn"),
}


HELD_OUT = (
    "mobilenet", "regnet", "efficientnet", "convnext", "tabular", "lstm", "audio", "unet", "encoder", "densenet",
    "shufflenet", "mnasnet", "mixer", "gru", "bert", "llama", "timm-efficientnet", "squeezenet", "timm-resnet-gn",
    "timm-mobilenetv3",
)  # fmt: skip
"""Models the engine was not tuned on, to check that what holds on the suite holds beyond it
(`--entries mobilenet,regnet,efficientnet,convnext,tabular,lstm,audio,unet,encoder,densenet,shufflenet,mnasnet,mixer,gru,bert,llama,timm-efficientnet,squeezenet,timm-resnet-gn,timm-mobilenetv3`); `make bench` runs the others."""
SUITE = tuple(name for name in ENTRIES if name not in HELD_OUT)


def _build(entry: Entry) -> nn.Module:
    if ":" in entry.factory:
        module, fn = entry.factory.split(":")
        return getattr(importlib.import_module(module), fn)()
    return globals()[entry.factory]()


def paths(name: str, work: Path) -> tuple[Path, Path]:
    """The checkpoint and data file of entry `name` (the sample's own for a sample)."""
    entry = ENTRIES[name]
    if entry.sample:
        from landscape.io.samples import sample

        s = sample(entry.sample)
        return Path(s["checkpoint"]), Path(s["data"])
    return work / name / ("model" if entry.hf else "model.pt"), work / name / "data.pt"


def prepare(name: str, work: Path) -> None:
    """Write entry `name`'s checkpoint and data under `work` (seeded; kept when already there)."""
    entry = ENTRIES[name]
    ckpt, data = paths(name, work)
    if entry.sample or (ckpt.exists() and data.exists()):
        return
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = _build(entry)
    assert entry.data is not None
    columns = entry.data(torch.Generator().manual_seed(1))
    _train_a_few_steps(model, entry, columns)
    if entry.hf:
        model.save_pretrained(ckpt)  # type: ignore[operator]
    else:
        torch.save(model.state_dict(), ckpt)
    torch.save(columns, data)


def _train_a_few_steps(model: nn.Module, entry: Entry, columns: dict[str, torch.Tensor], steps: int = 3) -> None:
    """A few Adam steps, as a checkpoint from early training has: no parameter is left at its exact
    initial zero (loss-landscapes' filter normalization divides by each filter's norm, and fails on a
    zero bias), and BatchNorm holds running statistics of real batches."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        n = len(next(iter(columns.values())))
        size = min(64, n // steps)
        rows = slice(size * step, size * (step + 1))
        if entry.loss == "next-token":
            ids = columns["input_ids"][rows]
            loss = model(input_ids=ids, labels=ids).loss
        elif entry.hf:
            loss = F.cross_entropy(model(input_ids=columns["input_ids"][rows]).logits, columns["labels"][rows])
        else:
            loss = F.cross_entropy(model(columns["x"][rows]), columns["y"][rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def cli_args(name: str, work: Path) -> list[str]:
    """How `landscape` is pointed at entry `name`."""
    entry = ENTRIES[name]
    ckpt, data = paths(name, work)
    model = (
        []
        if entry.hf
        else ["--model", entry.factory if ":" in entry.factory else f"{HERE / 'suite_models.py'}:{entry.factory}"]
    )
    return [*model, "--checkpoint", str(ckpt), "--data", str(data), "--loss", entry.loss, *entry.extra]


def load(name: str, work: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Callable]:
    """What a user's own script does: the model with its weights, in eval mode; inputs, targets, loss."""
    entry = ENTRIES[name]
    ckpt, data = paths(name, work)
    if entry.hf:
        import transformers

        auto = (
            transformers.AutoModelForCausalLM
            if entry.loss == "next-token"
            else transformers.AutoModelForSequenceClassification
        )
        model = auto.from_pretrained(ckpt)
    else:
        model = _build(entry)
        model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    if data.suffix == ".npz":
        d = {k: torch.from_numpy(v) for k, v in np.load(data).items()}
    else:
        d = torch.load(data, weights_only=True)
    if entry.loss == "next-token":
        x = y = d["input_ids"]

        def loss_fn(out, y):  # type: ignore[no-untyped-def]
            logits = out.logits
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())

    else:
        x, y = (d["input_ids"], d["labels"]) if entry.hf else (d["x"], d["y"])
        x, y = x if not x.is_floating_point() else x.float(), y.long()  # token ids stay integers

        def loss_fn(out, y):  # type: ignore[no-untyped-def]
            return F.cross_entropy(out.logits if entry.hf else out, y)

    return model, x, y, loss_fn
