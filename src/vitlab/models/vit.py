"""The Vision Transformer, top to bottom: patches -> embedding -> position -> encoder -> pooling -> head.

Every option is a string or number in `ModelConfig`; there is one class per building block and
no copies per variant. `forward(x, return_intermediates=True)` returns a dict of every stage,
including each layer's attention weights, so explanations need no hooks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.config import ModelConfig
from vitlab.models.posenc import sincos_1d_table, sincos_2d_table

Intermediates = dict[str, torch.Tensor]
# Rows at least this long take PyTorch's bf16 softmax kernel; shorter ones are upcast (softmax_rows).
BF16_SOFTMAX_MIN_TOKENS = 32
# On CPU, batches in fp32, or in bf16 without autograd, take the fused attention kernel from this many keys,
# or once keys x head size reaches the second figure (fused_kernel_pays).
FUSED_CPU_MIN_KEYS = 112
FUSED_CPU_MIN_KEYS_X_HEAD_DIM = 4096
# bf16 batches without autograd on a CPU without AMX take the explicit path while its scores (batch x heads x
# queries x keys) stay within this many, 2.25x ViT-S/16's at batch 256; past it the fused kernel bounds memory.
EXPLICIT_BF16_MAX_SCORES = 1 << 27
# Under torch.compile on CPU the explicit attention lays its scores out keys-major (attend);
# benchmarks/compiled_attention.py turns this off to time the row layout against it.
COMPILED_CPU_KEYS_MAJOR_SCORES = True


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kernel: str = "auto",
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention softmax(QK^T / sqrt(d_k)) V over (batch, heads, tokens, head_dim).

    `kernel` is 'manual' (explicit), 'sdpa' (PyTorch's fused kernel) or 'auto' (fused_kernel_pays).
    The fused kernel cannot return its weights, so a request for them takes the explicit path,
    which computes the same function.
    """
    fused = kernel == "sdpa" or (kernel == "auto" and fused_kernel_pays(q, k, v))
    if fused and not need_weights:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
    scaled_q = q * q.shape[-1] ** -0.5
    if COMPILED_CPU_KEYS_MAJOR_SCORES and q.device.type == "cpu" and torch.compiler.is_compiling():
        # Scores laid out keys-major, (batch, heads, keys, queries): inductor's softmax then runs across
        # queries in its vector lanes, where each short row of keys would be reduced inside one vector
        # (17 keys: a 16-lane vector and a masked one). Compiled bf16 training steps ran 1.07-1.08x as
        # fast on the MNIST model, 1.04-1.05x on width 192 and 0.97-1.01x on ViT-S/16
        # (benchmarks/compiled_attention.py, a 2-core AMD EPYC). Eager PyTorch's softmax over the middle
        # dimension gained nothing there (1.00x), so eager keeps rows.
        weights = (k @ scaled_q.transpose(-2, -1)).softmax(dim=-2).transpose(-2, -1)
    else:
        weights = softmax_rows(scaled_q @ k.transpose(-2, -1))
    mixed = F.dropout(weights, dropout_p) if dropout_p else weights
    return mixed @ v, (weights if need_weights else None)


def fused_kernel_pays(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether PyTorch's fused attention kernel is the faster path for these queries, keys and values.

    On GPUs it always is. On CPU never in bf16 where autograd will go back through it: its bf16 backward
    there is several times slower than the explicit path's (training steps 0.21-0.47x as fast from 17 to
    197 keys, 0.79x on ViT-S/16; Intel Xeon with AMX, benchmarks/cpu_choices.py). Otherwise (fp32, or
    bf16 without autograd) it pays for a single image, where fewer ops is what counts; for long rows,
    whose batch x heads x keys x keys weights the explicit path has to write and read back (from
    FUSED_CPU_MIN_KEYS keys); and for wide heads once keys x head size reaches
    FUSED_CPU_MIN_KEYS_X_HEAD_DIM, where the two tie and the fused kernel keeps no weights. Measured in
    fp32 on a 2-core AMD EPYC without bf16 units (benchmarks/cpu_choices.py), fused against explicit,
    with freed memory of every size kept for reuse as vitlab's commands run: training steps at head
    size 16 (MNIST width, batch 256) 0.75-0.90x from 17 to 101 keys, 0.98x at 122, 0.99x at 145, 1.25x
    at 197; head size 32 (batch 128) 1.00x at 101 and 145 keys; head size 64 0.95-1.00x from 37 to 65
    keys, 0.99x on ViT-S/16 (197); batch-256 inference 0.88x on the MNIST model (17 keys), 1.03x on the
    width-192 one (65 keys, head size 64); batch-1 latency 1.10x and 1.04x. Where large freed blocks go
    back to the OS (a program importing vitlab: runtime.reuse_freed_memory), the explicit path's
    weights, above 32 MB from 101 keys at batch 256, fault in afresh every step: fused was 1.03-1.25x
    at 122 keys, 1.65-1.89x at 145, 2.5x at 197. The rule keeps the fused kernel from 112 keys: a tie
    or better either way, and no weights kept. bf16 inference on the Intel Xeon with AMX falls on the
    same lines (calls in turn, batch 256): 0.97-1.02x on the MNIST model, 1.20-1.36x at 145 and 197 keys
    (head size 16), 1.07-1.10x on the width-192 model, 1.12x on ViT-S/16; batch-1 latency 1.08-1.24x.
    Below the line it wins too little to move it: head size 16, 0.79x at 26 and 37 keys, 1.02-1.12x
    from 50 to 82, 0.99-1.13x at 101; head size 32, 0.90x, 1.12x, 0.98x and 1.04x at 37, 50, 65, 101.
    Without AMX the fused kernel's bf16 forward loses at every batched shape measured: on a 2-core AMD
    EPYC with AVX-512 BF16 (2026-12-06), batch-256 inference 0.75x on the MNIST model, 0.80x at 101
    keys, 0.91x and 0.89x at 145 and 197 (head size 16), 0.84x on the width-192 model, 0.91x on
    ViT-S/16. There bf16 batches keep the explicit path up to EXPLICIT_BF16_MAX_SCORES scores, whose
    weights are then at most 256 MB a layer; a single image still takes the fused kernel (1.09-1.20x,
    0.96x on ViT-S/16).
    """
    if q.device.type != "cpu":
        return True
    if q.dtype != torch.float32 and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    keys, head_dim = k.shape[-2:]
    if q.shape[0] == 1:
        return True
    if q.dtype != torch.float32 and not cpu_has_amx():
        return q.shape[:-1].numel() * keys > EXPLICIT_BF16_MAX_SCORES
    return keys >= FUSED_CPU_MIN_KEYS or keys * head_dim >= FUSED_CPU_MIN_KEYS_X_HEAD_DIM


# Not cached: the probe takes 80 ns, and torch.compile warns about tracing through a cache; it
# takes this answer as a constant instead.
@torch.compiler.assume_constant_result
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, which multiply bf16 matrices (Intel Xeon from Sapphire Rapids on)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, returned in the scores' dtype, by the faster CPU kernel.

    PyTorch's bf16 softmax kernel computes in fp32 inside and rounds once, so its weights equal an
    fp32 softmax rounded to bf16, without an fp32 copy of the tokens x tokens weights: from 32
    tokens on it is the faster path (1.1-2.5x, forward + backward) but at 40 tokens on the AMD EPYC
    with AVX-512 BF16 (0.71x and 0.79x there: past 32 lanes a row's tail runs in scalar code; no
    preset has rows of 33 to 49 tokens, so the line stays). Rows shorter than its 32-lane vector
    fall to scalar code, 2-4.4x slower than upcasting to fp32 and back; 17 tokens is the default
    MNIST model (benchmarks/cpu_choices.py, on this 2-core AVX-512 CPU).
    """
    if scores.dtype in (torch.bfloat16, torch.float16) and scores.shape[-1] < BF16_SOFTMAX_MIN_TOKENS:
        return scores.float().softmax(dim=-1).to(scores.dtype)
    return scores.softmax(dim=-1)


def linear_after_norm(x: torch.Tensor, norm: nn.LayerNorm | None, linear: nn.Linear) -> torch.Tensor:
    """linear(norm(x)); while the norm's parameters train, with its scale and shift folded into the linear.

    W (x_hat * g + b) + c = (W * g) x_hat + (W b + c): the same function, but the norm's backward no
    longer sums the scale and shift gradients over every token; they come out of the linear's weight
    gradient, a product computed anyway. A training step 1.01-1.015x faster on the MNIST model, 1.03x
    on the width-192 one, 1.00x on ViT-S/16 (the speed benchmark's models, Intel Xeon with AMX).
    Inference keeps the plain order: there the fold's two small products cost more than the forward
    norm saves (MNIST model, batch-1 latency 0.59 ms plain, 0.72 ms folded).
    """
    if norm is None:
        return linear(x)
    if not (torch.is_grad_enabled() and norm.weight.requires_grad):
        return linear(norm(x))
    normalised = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
    shift = linear.weight @ norm.bias if linear.bias is None else torch.addmv(linear.bias, linear.weight, norm.bias)
    return F.linear(normalised, linear.weight * norm.weight, shift)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a whole residual branch per sample, rescaling the survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the right and bottom so both sides are multiples of `multiple` (never crop)."""
    height, width = images.shape[-2:]
    if height % multiple or width % multiple:
        images = F.pad(images, (0, -width % multiple, 0, -height % multiple))
    return images


class PatchEmbed(nn.Module):
    """Split the image into non-overlapping patches and project each to the embedding width.

    A convolution with kernel = stride = patch size is exactly a shared linear map of each
    flattened patch; the weights keep the convolution's (dim, channels, patch, patch) layout, which
    checkpoints and pretrained weights use. Images whose side is not a multiple of the patch are
    zero-padded on the right and bottom when the config allows it (never cropped).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.embed_dim, config.patch_size, stride=config.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The convolution's weights, applied as the matrix product the convolution equals: the same
        # result without oneDNN's per-call set-up, 2.6x faster at batch 1 on the MNIST model.
        images = pad_to_multiple(images, self.patch_size)
        batch, channels, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, (height // p) * (width // p), channels * p * p)  # row-major grid
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


class ConvStem(nn.Module):
    """The patch grid reached by stride-2 3x3 convolutions instead of one strided projection.

    log2(patch) convolutions, each halving the image and doubling the channels up to the width,
    with BatchNorm and ReLU, then a 1x1 projection (Xiao et al. 2021, "Early convolutions help
    transformers see better"). Same tokens, same grid as PatchEmbed; overlapping receptive
    fields give the encoder local features the single projection cannot.
    """

    @staticmethod
    def widths(config: ModelConfig) -> list[int]:
        """Channels from the image through each stride-2 convolution: doubling up to the width, at least 8."""
        halvings = config.patch_size.bit_length() - 1
        return [config.in_channels] + [max(config.embed_dim >> (halvings - 1 - i), 8) for i in range(halvings)]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        widths = self.widths(config)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(widths[-1], config.embed_dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(self.convs(pad_to_multiple(images, self.patch_size)))
        return tokens.flatten(2).transpose(1, 2)  # (batch, patches, dim), row-major


def dropout_or_identity(p: float) -> nn.Module:
    """Dropout with probability p, or a plain pass-through when p is 0.

    A no-op nn.Dropout still costs about 3.6 us a call against 0.9 us for nn.Identity, and a small
    ViT makes over a dozen such calls: batch-1 latency of the default MNIST model 1.06-1.09x faster
    (AMD EPYC and Intel Xeon, 2 threads). Neither holds parameters, so checkpoints are the same either way.
    """
    return nn.Dropout(p) if p > 0 else nn.Identity()


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused Q/K/V projection, per-head attention, concatenation, output projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.kernel = config.attention  # see attend(); ViT.set_attention_kernel can override it
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.proj_drop = dropout_or_identity(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        first_query_only: bool = False,
        norm: nn.LayerNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from every token, or with first_query_only from the first (class) token alone; the
        tokens normalised by `norm` first when given."""
        batch, tokens, dim = x.shape
        # Split along the projection's own layout and only then move heads ahead of tokens: the
        # backward then stacks the three gradients straight into that layout, one copy instead of
        # two (1.02-1.03x a training step on the speed benchmark's three models, Intel Xeon with AMX).
        qkv = linear_after_norm(x, norm, self.qkv).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = (part.transpose(1, 2) for part in qkv.unbind(2))
        if first_query_only:
            q = q[:, :, :1]
        out, weights = attend(
            q,
            k,
            v,
            kernel=self.kernel,
            dropout_p=self.attention_dropout if self.training else 0.0,
            need_weights=need_weights,
        )
        out = out.transpose(1, 2).reshape(batch, q.shape[2], dim)
        return self.proj_drop(self.proj(out)), weights


class MLP(nn.Module):
    """Two linear layers with GELU between, as in every ViT block."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.drop = dropout_or_identity(dropout)

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm | None = None) -> torch.Tensor:
        """The MLP of x, or of norm(x) when a norm is given."""
        return self.drop(self.fc2(self.drop(F.gelu(linear_after_norm(x, norm, self.fc1)))))


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(norm(x)), then x + mlp(norm(x)), each branch with drop path."""

    def __init__(self, config: ModelConfig, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config.embed_dim, config.mlp_dim, config.embed_dim, config.dropout)
        self.drop_path_rate = drop_path_rate

    def forward(
        self, x: torch.Tensor, need_weights: bool = False, first_token_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All tokens' outputs, or with first_token_only the first token's alone (keys and values still
        come from every token): what the last block owes class-token pooling."""
        attended, weights = self.attn(x, need_weights, first_token_only, norm=self.norm1)
        if first_token_only:
            x = x[:, :1]
        x = x + drop_path(attended, self.drop_path_rate, self.training)
        x = x + drop_path(self.mlp(x, norm=self.norm2), self.drop_path_rate, self.training)
        return x, weights


class AttentionPool(nn.Module):
    """Multi-head attention pooling (MAP): a learned query cross-attends to all tokens, then an MLP.

    This is the small decoder head of big_vision's ViT: one query instead of a class token.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.kernel = config.attention
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MLP(dim, config.mlp_dim, dim, config.dropout)

    def forward(self, tokens: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, num_tokens, dim = tokens.shape
        head_dim = dim // self.num_heads
        q = self.q(self.probe).reshape(1, 1, self.num_heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        kv = self.kv(tokens).view(batch, num_tokens, 2, self.num_heads, head_dim)
        k, v = (part.transpose(1, 2) for part in kv.unbind(2))  # as in SelfAttention
        out, weights = attend(q, k, v, kernel=self.kernel, need_weights=need_weights)
        pooled = self.proj(out.transpose(1, 2).reshape(batch, 1, dim))
        pooled = pooled + self.mlp(pooled, norm=self.norm)
        return pooled[:, 0], weights


class ViT(nn.Module):
    """Vision Transformer classifier built from a `ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.embed_dim

        self.patch_embed = ConvStem(config) if config.stem == "conv" else PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.has_class_token else None
        if config.posenc == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, dim))
        elif config.posenc == "sincos1d":
            self.register_buffer("pos_embed", sincos_1d_table(config.num_patches, dim)[None], persistent=False)
        elif config.posenc == "sincos2d":
            self.register_buffer("pos_embed", sincos_2d_table(config.grid_size, dim)[None], persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = dropout_or_identity(config.dropout)

        # Stochastic depth grows linearly with depth, as in DeiT.
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn_pool = AttentionPool(config) if config.pool == "map" else None

        self.head_drop = dropout_or_identity(config.dropout)
        if config.head == "mlp":
            hidden = config.head_hidden_dim or dim
            self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, config.num_classes))
        else:
            self.head = nn.Linear(dim, config.num_classes)
        self.reset_parameters()

    # ----- set-up -----------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Explicit init: truncated normal (std 0.02) for linear layers and tokens, zero head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch (or stem's 1x1) projection is a linear map of its input: LeCun-normal-like fan-in init.
        proj = self.patch_embed.proj
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / proj.weight[0].numel()))
        nn.init.zeros_(proj.bias)
        for token in (self.cls_token, self.pos_embed if isinstance(self.pos_embed, nn.Parameter) else None):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.probe, std=0.02)
        last = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def set_attention_kernel(self, kernel: str) -> None:
        """Override config.attention in every attention layer: 'auto', 'manual' or 'sdpa' (see attend)."""
        for module in self.modules():
            if isinstance(module, (SelfAttention, AttentionPool)):
                module.kernel = kernel

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be decayed besides biases and norms."""
        return {name for name, _ in self.named_parameters() if name in ("cls_token", "pos_embed", "attn_pool.probe")}

    # ----- forward pass, stage by stage -------------------------------------------------------
    def forward_features(
        self, images: torch.Tensor, intermediates: Intermediates | None = None, class_token_only: bool = False
    ) -> torch.Tensor:
        """Images (batch, channels, H, W) -> tokens (batch, tokens, dim), normalised unless norm_after_pool.

        With class_token_only the last block computes the class token's output alone (batch, 1, dim):
        all that class-token pooling reads, for the same logits and gradients. Its other tokens'
        projection, MLP and queries are 18% of the default MNIST model's FLOPs.
        """
        if class_token_only and self.cls_token is None:
            raise ValueError("class_token_only needs a model with a class token")
        record = intermediates.__setitem__ if intermediates is not None else lambda key, value: None
        x = self.patch_embed(images)
        record("patches", x)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        record("with_posenc", x)
        x = self.pos_drop(x)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            x, weights = block(x, intermediates is not None, class_token_only and index == last)
            record(f"block_{index}", x)
            if weights is not None:
                record(f"attention_{index}", weights)
        if not self.config.norm_after_pool:
            x = self.norm(x)
        record("tokens", x)
        return x

    def pool(self, tokens: torch.Tensor, intermediates: Intermediates | None = None) -> torch.Tensor:
        """Tokens -> one vector per image: the class token, the mean patch token, or attention pooling."""
        if self.config.pool == "cls":
            pooled = tokens[:, 0]
        elif self.config.pool == "mean":
            pooled = tokens[:, int(self.config.has_class_token) :].mean(dim=1)
        else:
            pooled, weights = self.attn_pool(tokens, need_weights=intermediates is not None)
            if intermediates is not None:
                intermediates["attention_pool"] = weights
        return self.norm(pooled) if self.config.norm_after_pool else pooled

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vector -> class logits."""
        return self.head(self.head_drop(pooled))

    def forward(self, images: torch.Tensor, return_intermediates: bool = False) -> torch.Tensor | Intermediates:
        """Logits, or with return_intermediates a dict of every stage ending in 'pooled' and 'logits'."""
        intermediates: Intermediates | None = {} if return_intermediates else None
        # Logits alone need only the class token out of the last block; intermediates keep every token.
        class_token_only = self.config.pool == "cls" and intermediates is None
        pooled = self.pool(self.forward_features(images, intermediates, class_token_only), intermediates)
        logits = self.forward_head(pooled)
        if intermediates is None:
            return logits
        intermediates["pooled"] = pooled
        intermediates["logits"] = logits
        return intermediates

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax of the logits), computed in fp32."""
        return self.forward(images).float().softmax(dim=-1)
