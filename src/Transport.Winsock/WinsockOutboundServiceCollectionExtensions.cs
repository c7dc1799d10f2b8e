using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Transport.Winsock;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the outbound side: an <see cref="IConnectionFactory"/> on the transport's connections.</summary>
public static class WinsockOutboundServiceCollectionExtensions
{
    /// <summary>
    /// Registers one <see cref="WinsockOutboundConnectionFactory"/> as itself and as the
    /// <see cref="IConnectionFactory"/> (unless one is registered already, which stays), and its
    /// <see cref="WinsockOutboundCounters"/>. <paramref name="configure"/> sets
    /// <see cref="WinsockOutboundOptions"/>, checked when the host starts. The container disposes the
    /// factory. For HttpClient, pass the factory to <see cref="WinsockReuse.CreateConnectCallback(WinsockOutboundConnectionFactory)"/>.
    /// </summary>
    /// <param name="services">The host's services.</param>
    /// <param name="configure">Sets the options; may be <see langword="null"/>.</param>
    /// <returns>The same <paramref name="services"/>, for chaining.</returns>
    public static IServiceCollection AddWinsockReuseConnectionFactory(this IServiceCollection services, Action<WinsockOutboundOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<WinsockOutboundOptions>().ValidateOnStart();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<WinsockOutboundOptions>, OutboundOptionsValidator>());
        services.TryAddSingleton(static provider => new WinsockOutboundConnectionFactory(
            provider.GetRequiredService<IOptions<WinsockOutboundOptions>>().Value,
            provider.GetService<ILoggerFactory>()?.CreateLogger("Transport.Winsock.Outbound"),
            meterFactory: provider.GetService<System.Diagnostics.Metrics.IMeterFactory>()));
        services.TryAddSingleton<IConnectionFactory>(static provider => provider.GetRequiredService<WinsockOutboundConnectionFactory>());
        services.TryAddSingleton(static provider => provider.GetRequiredService<WinsockOutboundConnectionFactory>().Counters);
        return services;
    }

    private sealed class OutboundOptionsValidator : IValidateOptions<WinsockOutboundOptions>
    {
        public ValidateOptionsResult Validate(string? name, WinsockOutboundOptions options)
        {
            var failures = options.Validate();
            return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
        }
    }
}
