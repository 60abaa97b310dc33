"""Tensor names and shapes of the official files (docs/MODEL.md#checkpoints), written from the release's
layout as functions of the dims. `synth` writes exactly these; the services derive what they expect from their own
runtime modules, so a test comparing the two checks one against the other.
"""

from __future__ import annotations

from shared.presets import AudioEncoderDims, CodecDims, LLMDims, TTSDims, VisionDims

Shapes = dict[str, tuple[int, ...]]
TTS_SPECIAL_TOKENS = 4  # BOS, SOS, EOS, PAD after the codec vocabulary
CODEC_PRE_KERNEL = CODEC_POST_KERNEL = 7
SUBSAMPLING_KERNEL = 3


def llm_body(d: LLMDims) -> Shapes:
    """`model.embed_tokens`, `model.layers.*`, `model.norm` (the HF save order; `lm_head` comes last)."""
    hidden, q_width, kv_width = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    shapes: Shapes = {"model.embed_tokens.weight": (d.vocab_size, hidden)}
    for i in range(d.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q_width, hidden), p + "self_attn.q_proj.bias": (q_width,),
            p + "self_attn.k_proj.weight": (kv_width, hidden), p + "self_attn.k_proj.bias": (kv_width,),
            p + "self_attn.v_proj.weight": (kv_width, hidden), p + "self_attn.v_proj.bias": (kv_width,),
            p + "self_attn.o_proj.weight": (hidden, q_width),
            p + "mlp.gate_proj.weight": (d.intermediate_size, hidden),
            p + "mlp.up_proj.weight": (d.intermediate_size, hidden),
            p + "mlp.down_proj.weight": (hidden, d.intermediate_size),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        })
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def lm_head(d: LLMDims) -> Shapes:
    return {"lm_head.weight": (d.vocab_size, d.hidden_size)}


def internvit(v: VisionDims) -> Shapes:
    """InternViT keys without a prefix (as in its own model.safetensors)."""
    width, grid = v.hidden_size, v.image_size // v.patch_size
    shapes: Shapes = {
        "embeddings.class_embedding": (1, 1, width),
        "embeddings.patch_embedding.weight": (width, 3, v.patch_size, v.patch_size),
        "embeddings.patch_embedding.bias": (width,),
        "embeddings.position_embedding": (1, grid * grid + 1, width),
    }
    for i in range(v.num_layers):
        p = f"encoder.layers.{i}."
        shapes.update({
            p + "ls1": (width,), p + "ls2": (width,),
            p + "attn.qkv.weight": (3 * width, width), p + "attn.qkv.bias": (3 * width,),
            p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,),
            p + "mlp.fc1.weight": (v.intermediate_size, width), p + "mlp.fc1.bias": (v.intermediate_size,),
            p + "mlp.fc2.weight": (width, v.intermediate_size), p + "mlp.fc2.bias": (width,),
            p + "norm1.weight": (width,), p + "norm1.bias": (width,),
            p + "norm2.weight": (width,), p + "norm2.bias": (width,),
        })
    return shapes


def projector(v: VisionDims) -> Shapes:
    """`mlp2x_gelu` keys without the `model.mm_projector.` prefix."""
    return {
        "0.weight": (v.llm_hidden, v.projector_in), "0.bias": (v.llm_hidden,),
        "2.weight": (v.llm_hidden, v.llm_hidden), "2.bias": (v.llm_hidden,),
    }


def whale(a: AudioEncoderDims) -> Shapes:
    """Audio encoder + adapter keys as in the stand-alone final.pt (`encoder.*`, `adpter.*`)."""
    width, k = a.attention_dim, SUBSAMPLING_KERNEL
    freq = ((a.num_mel_bins - 1) // 2 - 1) // 2
    shapes: Shapes = {
        "encoder.global_cmvn.mean": (a.num_mel_bins,), "encoder.global_cmvn.istd": (a.num_mel_bins,),
        "encoder.enc.0.core.conv.0.weight": (width, 1, k, k), "encoder.enc.0.core.conv.0.bias": (width,),
        "encoder.enc.0.core.conv.2.weight": (width, width, k, k), "encoder.enc.0.core.conv.2.bias": (width,),
        "encoder.enc.0.core.out.0.weight": (width, width * freq), "encoder.enc.0.core.out.0.bias": (width,),
        "encoder.enc.1.embed.0.weight": (width, width), "encoder.enc.1.embed.0.bias": (width,),
        "encoder.enc.1.embed.1.weight": (width,), "encoder.enc.1.embed.1.bias": (width,),
    }
    head_dim = width // a.attention_heads
    for i in range(a.num_blocks):
        p = f"encoder.enc.1.encoders.{i}."
        for name in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.linear_{name}.weight"] = (width, width)
            shapes[f"{p}self_attn.linear_{name}.bias"] = (width,)
        shapes.update({
            p + "self_attn.linear_pos.weight": (width, width),
            p + "self_attn.pos_bias_u": (a.attention_heads, head_dim),
            p + "self_attn.pos_bias_v": (a.attention_heads, head_dim),
            p + "feed_forward.w_1.weight": (a.linear_units, width), p + "feed_forward.w_1.bias": (a.linear_units,),
            p + "feed_forward.w_2.weight": (width, a.linear_units), p + "feed_forward.w_2.bias": (width,),
            p + "norm1.weight": (width,), p + "norm1.bias": (width,),
            p + "norm2.weight": (width,), p + "norm2.bias": (width,),
        })
    shapes.update({
        "encoder.enc.1.after_norm.weight": (width,), "encoder.enc.1.after_norm.bias": (width,),
        "adpter.conv1d2.weight": (a.adapter_hidden, width, a.adapter_kernel_size),
        "adpter.conv1d2.bias": (a.adapter_hidden,),
        "adpter.bn2.weight": (a.adapter_hidden,), "adpter.bn2.bias": (a.adapter_hidden,),
        "adpter.project.weight": (a.llm_hidden, a.adapter_hidden), "adpter.project.bias": (a.llm_hidden,),
    })
    return shapes


def _llama_layer(prefix: str, t: TTSDims) -> Shapes:
    d, i = t.hidden_size, t.intermediate_size
    shapes = {f"{prefix}self_attn.{n}_proj.weight": (d, d) for n in ("q", "k", "v", "o")}
    shapes.update({
        prefix + "mlp.gate_proj.weight": (i, d), prefix + "mlp.up_proj.weight": (i, d),
        prefix + "mlp.down_proj.weight": (d, i),
        prefix + "input_layernorm.weight": (d,), prefix + "post_attention_layernorm.weight": (d,),
    })
    return shapes


def tts_decoder(t: TTSDims, prefix_layers: bool = True) -> Shapes:
    """`decoder/final.pt` (kv_cache_prefix_finetune = 1 adds the unused `layers_prefix`)."""
    vocab = t.codec_vocab + TTS_SPECIAL_TOKENS
    shapes: Shapes = {"embedding.weight": (vocab, t.hidden_size)}
    for i in range(t.num_blocks // 2):
        shapes.update(_llama_layer(f"layers_pre_nn.{i}.", t))
    for i in range(t.num_blocks):
        shapes.update(_llama_layer(f"layers.{i}.", t))
    shapes.update({"norm.weight": (t.hidden_size,), "out_fnn.weight": (vocab, t.hidden_size), "out_fnn.bias": (vocab,)})
    if prefix_layers:
        for i in range(t.num_blocks):
            shapes.update(_llama_layer(f"layers_prefix.{i}.", t))
    return shapes


def generator_convs(c: CodecDims) -> dict[str, tuple[tuple[int, ...], int]]:
    """Folded conv weight shape and stride (>1 only for the ConvTranspose ups) of every generator conv."""
    convs = {"conv_pre": ((c.upsample_initial_channel, c.codebook_dim, CODEC_PRE_KERNEL), 1)}
    channels = c.upsample_initial_channel
    for stage, (rate, kernel) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
        convs[f"ups.{stage}"] = ((channels, channels // 2, kernel), rate)  # ConvTranspose1d: [C_in, C_out, k]
        channels //= 2
        for j, (res_kernel, dilations) in enumerate(zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)):
            block = stage * len(c.resblock_kernel_sizes) + j
            for branch in ("convs1", "convs2"):
                for m in range(len(dilations)):
                    convs[f"resblocks.{block}.{branch}.{m}"] = ((channels, channels, res_kernel), 1)
    convs["conv_post"] = ((1, channels, CODEC_POST_KERNEL), 1)
    return convs


def codec_generator(c: CodecDims) -> Shapes:
    """`final.pt['generator']`: weight-norm form (weight_g [dim0, 1, 1], weight_v, bias [out])."""
    shapes: Shapes = {}
    for name, (shape, stride) in generator_convs(c).items():
        out_channels = shape[1] if name.startswith("ups.") else shape[0]
        shapes.update({f"{name}.weight_g": (shape[0], 1, 1), f"{name}.weight_v": shape, f"{name}.bias": (out_channels,)})
    return shapes


def codec_quantizer(c: CodecDims) -> Shapes:
    shapes: Shapes = {"quantizer_modules.0.embedding.weight": (c.n_codes, c.codebook_dim)}
    for i in range(c.global_code_num):
        shapes[f"quantizer_modules_globaltokens.{i}.embedding.weight"] = (c.n_codes, c.global_dim // c.global_code_num)
    return shapes


def codec_encoder(c: CodecDims, base: int, feature_conv: tuple[int, int, int, int]) -> Shapes:
    """`final.pt['encoder']`, the analysis side (unused at inference): the reference's `Encoder` with its
    base width `base` (32 in the release) and GlobalTokenEncoder `feature_conv` = (in, hidden, out, k)."""
    shapes: Shapes = {"conv_pre.weight_g": (base, 1, 1), "conv_pre.weight_v": (base, 1, 7), "conv_pre.bias": (base,)}
    stages = list(reversed(list(zip(c.upsample_rates, c.upsample_kernel_sizes))))
    kernels = list(reversed(list(zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes))))
    for i, (_, kernel) in enumerate(stages):
        cin, cout = base * 2**i, base * 2 ** (i + 1)
        shapes.update({f"ups.{i}.weight_g": (cout, 1, 1), f"ups.{i}.weight_v": (cout, cin, kernel), f"ups.{i}.bias": (cout,)})
        for j, (res_kernel, dilations) in enumerate(kernels):
            block = i * len(kernels) + j
            for branch in ("convs1", "convs2"):
                for m in range(len(dilations)):
                    p = f"resblocks.{block}.{branch}.{m}."
                    shapes.update({p + "weight_g": (cout, 1, 1), p + "weight_v": (cout, cout, res_kernel), p + "bias": (cout,)})
            shapes.update({f"normalize.{block}.weight": (cout,), f"normalize.{block}.bias": (cout,)})
    top = base * 2 ** len(stages)
    fin, fhid, fout, fk = feature_conv
    shapes.update({
        "conv_post.weight": (top, top, 3), "conv_post.bias": (top,),
        "linear.0.weight": (c.global_dim, c.global_dim), "linear.0.bias": (c.global_dim,),
        "GlobalTokenEncoder.conv.0.weight": (fhid, fin, fk), "GlobalTokenEncoder.conv.2.weight": (fhid, fhid, fk),
        "GlobalTokenEncoder.conv.4.weight": (fout, fhid, fk),
        "GlobalTokenEncoder.fn.0.weight": (fout, fout), "GlobalTokenEncoder.fn.0.bias": (fout,),
        "GlobalTokenEncoder.fn.2.weight": (fout,), "GlobalTokenEncoder.fn.2.bias": (fout,),
        "GlobalTokenEncoder.fn.2.running_mean": (fout,), "GlobalTokenEncoder.fn.2.running_var": (fout,),
        "GlobalTokenEncoder.fn.2.num_batches_tracked": (),
    })
    return shapes
