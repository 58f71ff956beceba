"""The process a runner runs in: its setup before TensorFlow is imported (process), where
TensorFlow 1.15 and 2.21 differ (stacks), the settings that change a run's numbers
(numerics), the CPU and its kernels (cpu_info), and the console's progress lines.

May import runs/.
"""
