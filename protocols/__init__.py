"""Built-in protocol plugins (installed as ``sslbench.protocols``): one file per protocol, each registering itself
with ``@register_protocol``."""
