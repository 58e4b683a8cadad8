from modules import sd_samplers_kdiffusion

all_samplers = list(sd_samplers_kdiffusion.samplers_data_k_diffusion)
all_samplers_map = {x.name: x for x in all_samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name) or all_samplers_map["Euler"]


def create_sampler(name, model):
    config = find_sampler_config(name)
    sampler = sd_samplers_kdiffusion.KDiffusionSampler(config.funcname, model, config.options)
    sampler.config = config
    return sampler
