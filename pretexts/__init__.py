"""Built-in pretext plugins (installed as ``sslbench.pretexts``): one file per pretext, each registering itself
with ``@register_pretext``."""
