"""Images in: decoding, image folders and lists, the evaluation transform and the paper's lighting noise."""
