"""--init: the weights a run starts from, a Vivim checkpoint of the same variant (fine-tuning) or SegFormer weights."""

from __future__ import annotations

from pathlib import Path

from vivim.errors import VivimError


def initialise_weights(model, source: str, verbose: bool) -> None:
    """--init: a Vivim checkpoint (fine-tune; same variant, any T / size; 'demo' names the bundled weights, as in the
    other tools) or local SegFormer weights."""
    from vivim.checkpoint import FORMAT, checkpoint_file, read_metadata

    path = Path(checkpoint_file(source))
    if not path.exists():
        raise VivimError(f"--init {source}: no such file or folder (a Vivim checkpoint, 'demo', or a SegFormer folder "
                         "or file)")
    if path.name.endswith(".state.pt"):  # vivim-train's resume state holds the optimiser too, not a model to load
        last = path.with_name(path.name[: -len(".state.pt")] + ".last.safetensors")
        raise VivimError(f"--init {path}: a resume state, not weights; continue that run with --resume, or "
                         f"fine-tune from {last}")
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                is_vivim = (handle.metadata() or {}).get("format") == FORMAT
        except (SafetensorError, OSError) as exc:
            raise VivimError(f"--init {path}: not a readable safetensors file ({exc})") from None
        if is_vivim:
            from safetensors.torch import load_file

            meta = read_metadata(path)
            if meta.get("variant") != model.config.name:
                raise VivimError(f"--init {path}: a '{meta.get('variant')}' checkpoint cannot initialise the '{model.config.name}' variant")
            state = load_file(str(path))
            ours = model.state_dict()
            wrong = [k for k in ours if k not in state or state[k].shape != ours[k].shape]
            wrong += [k for k in state if k not in ours]  # e.g. a checkpoint of another version of the model
            if wrong:
                raise VivimError(f"--init {path}: {len(wrong)} tensors do not fit this model (e.g. {wrong[0]})")
            model.load_state_dict(state)
            if verbose:
                print(f"initialised all weights from Vivim checkpoint {path}")
            return
    from vivim.model.segformer_import import load_segformer_weights

    try:
        report = load_segformer_weights(model, source)
    except VivimError as exc:
        message = str(exc)
        named = message.startswith((str(source), str(path)))  # the reader's errors mostly begin with the path
        raise VivimError(f"--init {message}" if named else f"--init {source}: {message}") from None
    if verbose:
        print(f"initialised {len(report.mapped)} tensors from SegFormer weights {source}")
