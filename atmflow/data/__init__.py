"""Task data: real image data sets that install offline, split per task into train / validation / test."""
