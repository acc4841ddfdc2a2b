"""Key -> shape of the standard blocks in published checkpoints (written from the
reference libraries' module structure), shared by the converter tests."""


def ln(prefix, w):
    """A LayerNorm."""
    return {f"{prefix}.weight": (w,), f"{prefix}.bias": (w,)}


def _block(prefix, w, norm1, qkv_weight, qkv_bias, proj, norm2, fc1, fc2):
    """A pre-norm transformer block (MLP ratio 4) under the given module names."""
    return {**ln(f"{prefix}.{norm1}", w),
            f"{prefix}.{qkv_weight}": (3 * w, w), f"{prefix}.{qkv_bias}": (3 * w,),
            f"{prefix}.{proj}.weight": (w, w), f"{prefix}.{proj}.bias": (w,),
            **ln(f"{prefix}.{norm2}", w),
            f"{prefix}.{fc1}.weight": (4 * w, w), f"{prefix}.{fc1}.bias": (4 * w,),
            f"{prefix}.{fc2}.weight": (w, 4 * w), f"{prefix}.{fc2}.bias": (w,)}


def clip_block(prefix, w):
    """open_clip / OpenAI CLIP ResidualAttentionBlock."""
    return _block(prefix, w, "ln_1", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj", "ln_2",
                  "mlp.c_fc", "mlp.c_proj")


def timm_block(prefix, w):
    """timm ViT Block (no layer scale)."""
    return _block(prefix, w, "norm1", "attn.qkv.weight", "attn.qkv.bias", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
