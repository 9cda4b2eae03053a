"""Package data: the design spaces (``spaces/*.yaml``) and the example studies (``studies/*.yaml``)."""
