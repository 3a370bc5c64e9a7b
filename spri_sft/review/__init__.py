"""`spri-sft view`: look at records in the browser and record which ones the dataset must drop.

index     an SQLite index of one or more records files (byte offsets; records read on demand)
server    the local HTTP server and its JSON API (`spri-sft view PATH`)
export    one self-contained HTML file of a stratified sample (`spri-sft view PATH --export FILE.html`)
decisions the append-only decisions file that `spri-sft format` obeys
"""
