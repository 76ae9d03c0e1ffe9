"""Reading and writing medical volumes, 2D images and dataset layouts, keeping geometry."""
