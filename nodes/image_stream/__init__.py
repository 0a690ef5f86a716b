"""InsightEdit's decoupled image stream: IP-Adapter-format weights as an additive attn2 patch."""
