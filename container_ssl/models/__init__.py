"""Models: Container block, Container-Light/Container (timm-registered), DeiT baseline, DINO head."""
