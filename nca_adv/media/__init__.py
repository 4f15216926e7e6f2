"""What a person looks at: videos, image grids and the HTML report."""
