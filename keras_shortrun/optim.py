"""A functional Adam step in ``keras.ops``, for updates inside compiled code (chain inputs, step sizes)."""

from keras import ops


def adam_step(param, grad, m, v, t, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """One Adam update; ``t`` is the 1-based step count. Returns ``(param, m, v)``."""
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * ops.square(grad)
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    return param - learning_rate * m_hat / (ops.sqrt(v_hat) + epsilon), m, v
