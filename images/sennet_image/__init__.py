"""Build, check and boot the Sennet appliance image.

Everything the image contains is pinned in ../debian.lock.json and
../wheels.lock.json; these modules turn the pinned inputs into a root
filesystem, an initramfs, a unified kernel image and a GPT disk, the same way
under Bazel (genrules call `python3 -m sennet_image ...`) and by hand.
"""
