import re

from setuptools import find_packages, setup

with open('mmswinv2/version.py') as f:
    version = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

setup(
    name='mmswinv2',
    version=version,
    description='Swin Transformer V2 backbones for MMDetection and MMSegmentation',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmswinv2', 'mmswinv2.*']),
    # the CPU attention kernel's source (built by python -m mmswinv2.cpu.build)
    package_data={'mmswinv2.cpu': ['csrc/*.cpp']},
    python_requires='>=3.8',
    # torch is deliberately not listed: pip would replace a working CPU/CUDA build with the
    # registry's newest. The tested stack (mmcv with ops, mmdet, mmseg) is in requirements.txt.
    install_requires=['mmengine>=0.10.0,<1.0.0'],
    license='Apache-2.0',
)
