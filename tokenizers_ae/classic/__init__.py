"""The classic autoencoder family as small reference modules, one idea per file: the plain
(linear / MLP / deep) autoencoder (`base`), convolutional (`conv`), denoising (`denoising`),
sparse: KL, L1 / overcomplete, top-k (`sparse`), contractive (`contractive`), stacked (`stacked`),
sequence-to-sequence (`recurrent`), VAE / beta-VAE / conditional VAE (`vae`), adversarial (`aae`),
Wasserstein-MMD (`wae`), masked ViT (`mae`) and the top-k sparse autoencoder for language-model
activations (`sae`). Maths only: no I/O, no trainer."""

from tokenizers_ae.classic.aae import AdversarialAutoencoder, LatentDiscriminator
from tokenizers_ae.classic.base import Autoencoder, ClassicOutput, mlp, mlp_pair
from tokenizers_ae.classic.contractive import ContractiveAutoencoder
from tokenizers_ae.classic.conv import ConvAutoencoder
from tokenizers_ae.classic.denoising import CORRUPTIONS, DenoisingAutoencoder
from tokenizers_ae.classic.mae import MaskedAutoencoder
from tokenizers_ae.classic.recurrent import Seq2SeqAutoencoder
from tokenizers_ae.classic.sae import TopKSAE
from tokenizers_ae.classic.sparse import KLSparseAutoencoder, L1Autoencoder, TopKAutoencoder
from tokenizers_ae.classic.stacked import StackedAutoencoder
from tokenizers_ae.classic.vae import VAE, ConditionalVAE
from tokenizers_ae.classic.wae import WassersteinAutoencoder

__all__ = ["AdversarialAutoencoder", "Autoencoder", "CORRUPTIONS", "ClassicOutput", "ConditionalVAE",
           "ContractiveAutoencoder", "ConvAutoencoder", "DenoisingAutoencoder", "KLSparseAutoencoder",
           "L1Autoencoder", "LatentDiscriminator", "MaskedAutoencoder", "Seq2SeqAutoencoder", "StackedAutoencoder",
           "TopKAutoencoder", "TopKSAE", "VAE", "WassersteinAutoencoder", "mlp", "mlp_pair"]
