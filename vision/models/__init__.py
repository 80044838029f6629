"""Models at rest: architectures, the versioned model store, safetensors weights, checkpoint import,
pretrained downloads, and the torch device they run on."""
