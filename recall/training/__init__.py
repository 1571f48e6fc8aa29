"""Training of recall's learned components: the gate (``recall gate train``) and the
continuous-prompt model (``recall recipe train``).

Sits on top with the benchmarks: it reads the data sets, builds edits and scores gate
features the way the runtime does, so it imports the runtime layer, never the reverse."""
