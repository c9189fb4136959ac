"""Loading: official checkpoints → converted MLX model folders → built, strictly loaded components."""
