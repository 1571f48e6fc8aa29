"""``recall.methods``: parameter editors and trainable memory components.

FT-L, ROME, MEMIT and AlphaEdit (weight editors behind one contract), their second-moment
statistics, the consolidation core, GRACE codebooks and the RECIPE continuous-prompt model.

The folder is ``methods/`` at the repository's top level; ``pyproject.toml`` maps it to
``recall.methods``. It imports only the base layer, ``recall.core``: the runtime uses these
methods, never the other way round (training code that needs the runtime lives in
``recall.training``)."""
