"""The script Streamlit runs: `streamlit run internlm/web_demo/app.py -- <checkpoint> [--device cpu]`."""

import sys

from internlm.web_demo.page import main

main(sys.argv[1:])
