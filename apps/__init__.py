"""The top layer: what is built on the services — the `vita` CLI, the local launcher, the bench, the
checkpoint tools and the in-process composition of the engines. Nothing below imports from here."""
