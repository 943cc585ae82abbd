"""umx-tune's default dataset, synthetic songs in the MUSDB18-HQ layout, generated on first use.

lifecycle   the cache folder, building it atomically, the musdb setup file and the marker
music       one song per track: vocals, bass, drums and chords sharing key and tempo
"""
