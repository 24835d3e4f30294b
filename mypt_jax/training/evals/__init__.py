"""Val losses, eval sets and the red-line checks of an eval."""
